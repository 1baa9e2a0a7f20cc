"""SAM vs SlimSAM comparison app: `python app.py --help` for options. Hugging Face Spaces runs this file."""
from demo.cli import main

if __name__ == "__main__":
    main()
