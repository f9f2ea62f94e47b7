"""Layer 4, the faces: CLI, OpenAI-compatible server, doctor, bench, eval."""
