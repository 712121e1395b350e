"""Chat-model factory, the chain-of-thought planner and its tools, LLM-written class descriptions."""
