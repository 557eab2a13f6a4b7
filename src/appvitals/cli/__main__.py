"""`python -m appvitals.cli`: the `vitals` command without the console script on PATH."""

from . import main

if __name__ == "__main__":
    main()
