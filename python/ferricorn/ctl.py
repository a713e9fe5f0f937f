"""The ``ferricornctl`` console script: hands ``argv`` to the Rust core."""

import sys


def main():
    from ferricorn._core import ctl

    sys.exit(ctl(sys.argv))


if __name__ == "__main__":
    main()
