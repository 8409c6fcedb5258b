"""Top lines of a py-spy raw profile (py-spy record -f raw): self and
inclusive share of samples per frame."""

import collections
import sys


def main(path, n=12):
    self_t, incl, total = collections.Counter(), collections.Counter(), 0
    for line in open(path):
        stack, count = line.rsplit(" ", 1)
        count = int(count)
        total += count
        frames = stack.split(";")
        self_t[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    print(f"{total} samples")
    print("self:")
    for f, c in self_t.most_common(n):
        print(f"  {100 * c / total:5.1f}%  {f}")
    print("inclusive:")
    for f, c in incl.most_common(n):
        print(f"  {100 * c / total:5.1f}%  {f}")


if __name__ == "__main__":
    main(sys.argv[1])
