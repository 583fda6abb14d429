"""The Copilot engine: LLM router, prompt orchestration, generation targets with validators and repair."""
