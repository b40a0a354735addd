"""ponder.demos — the Gradio app (`ponder demo`) and the showcase job; imports sdk, never the reverse."""
