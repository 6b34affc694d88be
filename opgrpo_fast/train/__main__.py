"""``python -m opgrpo_fast.train`` (no arguments: the tiny-cpu preset)."""
from .loop import main

if __name__ == "__main__":
    main()
