"""GaussianMixture.fit against scikit-learn in CPU time, one fit per process (how the
figures in docs/density-and-vae.md were taken on a machine too busy for wall-clock
timing). Uses test_bench_density.py's data and initial parameters; run with one thread:

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/density_cpu_time.py 1000000 genfast
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/density_cpu_time.py 1000000 sklearn
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bench_density import ITERATIONS, mixture_data, peak_extra_mib, sklearn_fit  # noqa: E402

from genfast.density import GaussianMixture  # noqa: E402


def main() -> None:
    n, impl = int(sys.argv[1]), sys.argv[2]
    if impl not in ("genfast", "sklearn"):
        raise SystemExit("usage: density_cpu_time.py N genfast|sklearn")
    x, weights, means, precisions = mixture_data(n, 16, 32)
    array = x.double().numpy()
    if impl == "genfast":
        fn = lambda: GaussianMixture(32, tol=0, max_iter=ITERATIONS, weights_init=weights, means_init=means,
                                     precisions_init=precisions).fit(x)
    else:
        fn = lambda: sklearn_fit(array, weights, means, precisions)
    wall, cpu = time.perf_counter(), time.process_time()
    fitted, peak = peak_extra_mib(fn, "cpu")
    print(f"{impl} N={n}: wall {time.perf_counter() - wall:.1f} s, cpu {time.process_time() - cpu:.2f} s, "
          f"mean log-likelihood {fitted.lower_bound_!r}, peak extra memory {peak} MiB, "
          f"{torch.get_num_threads()} torch thread(s)")


if __name__ == "__main__":
    main()
