"""The ``ferricorn`` console script: hands ``argv`` to the Rust core."""

import sys


def main():
    from ferricorn._core import run

    sys.exit(run(sys.argv))


if __name__ == "__main__":
    main()
