"""`python -m appvitals`: the `vitals` command line."""

from .cli import main

if __name__ == "__main__":
    main()
