"""`python -m appvitals`: the `vitals` command line."""

from appvitals.cli import main

if __name__ == "__main__":
    main()
