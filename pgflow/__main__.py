"""`python -m pgflow` runs the `pgflow` command line (handy where scripts are not on PATH)."""

from pgflow.cli import main

if __name__ == "__main__":
    main()
