"""Vision tasks scored on the resident model's outputs (no text generation)."""
