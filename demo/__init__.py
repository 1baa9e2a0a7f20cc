"""The SAM vs SlimSAM comparison app (Gradio). `python app.py` starts it; `build_app` builds it."""
