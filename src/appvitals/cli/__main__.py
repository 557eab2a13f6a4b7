"""`python -m appvitals.cli`: the `vitals` command without the console script on PATH."""

from appvitals.cli import main

if __name__ == "__main__":
    main()
