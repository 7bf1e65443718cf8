"""``python -m edgetl``: the command line, also as torchrun starts it (``torchrun ... -m edgetl finetune ...``)."""

from edgetl.cli import main

if __name__ == "__main__":
    main(prog_name="edgetl")
