"""Layer 3, the runtime: prompts (two branches), the engine (scheduler + runner), the Aligner API."""
