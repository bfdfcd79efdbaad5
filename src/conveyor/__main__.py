"""``python -m conveyor``: the command line (see :mod:`conveyor.cli`)."""

from conveyor.cli import main

if __name__ == "__main__":
    main()
