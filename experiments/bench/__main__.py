"""``python -m experiments.bench``: the CPU throughput benchmark (:mod:`experiments.bench.throughput`)."""

from experiments.process import use_huge_pages

use_huge_pages()  # an entry point: before torch is imported

from experiments.bench.throughput import main  # noqa: E402

if __name__ == "__main__":
    main()
