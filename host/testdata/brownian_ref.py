"""Writes brownian_ref.json, the reference values for host/brownian_test.go.

Run with Debian's torch and numpy (python3-torch, python3-numpy) and
torchsde's and k-diffusion's sources at paths given by the environment.
torchsde imports the small `trampoline` package; when it is not installed,
an equivalent stand-in defined below is used:

    TORCHSDE=/path/to/torchsde KDIFF=/path/to/k-diffusion \
        python3 host/testdata/brownian_ref.py > host/testdata/brownian_ref.json

TORCHSDE is a checkout of google-research/torchsde (the folder holding the
`torchsde` package), KDIFF one of crowsonkb/k-diffusion (the folder holding
`k_diffusion`). k-diffusion's sampling.py is loaded alone, with stand-ins for
the imports it does not use here (scipy, torchdiffeq, tqdm).

It records, for a few seeds and sigma schedules: numpy SeedSequence states
(the per-interval seeds torchsde derives), the noise k-diffusion's
BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed) returns for each
(sigma, sigma_next) step, and the latent sample_dpmpp_2m_sde returns on a stub
denoiser D(x, sigma) = x / (1 + sigma^2) from x = randn(seed) * sigma_max.
Only some elements (IDX) plus the float64 sum and sum of squares of each
tensor are kept, to keep the fixture small.
"""
import json
import os
import sys
import types

import numpy as np
import torch



def install_trampoline_standin():
    """Registers a minimal yield-based trampoline module: a generator yields a
    sub-generator to call it and gets its return value back; raising
    TailCall(gen) replaces the running generator with gen."""
    try:
        import trampoline  # noqa: F401
        return
    except ImportError:
        pass
    mod = types.ModuleType("trampoline")

    class TailCall(BaseException):
        def __init__(self, call):
            self.call = call

    def run(gen):
        stack, ret = [gen], None
        while stack:
            try:
                stack.append(stack[-1].send(ret))
                ret = None
            except StopIteration as e:
                stack.pop()
                ret = e.value
            except TailCall as tc:
                stack[-1] = tc.call
                ret = None
        return ret

    mod.TailCall, mod.trampoline = TailCall, run
    sys.modules["trampoline"] = mod


install_trampoline_standin()
sys.path.insert(0, os.environ["TORCHSDE"])
import torchsde  # noqa: E402,F401


def load_kdiffusion_sampling():
    root = os.environ["KDIFF"]
    for name in ("scipy", "scipy.integrate", "torchdiffeq", "tqdm", "tqdm.auto"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["scipy"].integrate = sys.modules["scipy.integrate"]
    sys.modules["torchdiffeq"].odeint = None
    sys.modules["tqdm.auto"].trange = lambda n, disable=None: range(n)
    sys.modules["tqdm.auto"].tqdm = None
    pkg = types.ModuleType("kd")
    pkg.__path__ = []
    utils = types.ModuleType("kd.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    pkg.utils = utils
    sys.modules["kd"] = pkg
    sys.modules["kd.utils"] = utils
    mod = types.ModuleType("kd.sampling")
    mod.__package__ = "kd"
    path = os.path.join(root, "k_diffusion", "sampling.py")
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), mod.__dict__)
    return mod


K = load_kdiffusion_sampling()

SIGMA_MIN, SIGMA_MAX = 0.029167532920837402, 14.614643096923828  # SD1.5


def pick(t):
    flat = t.flatten().double()
    n = flat.numel()
    idx = [0, 1, 7, 8, 15, 16, 131, n - 1]
    return {
        "idx": idx,
        "vals": [float(flat[i]) for i in idx],
        "sum": float(flat.sum()),
        "sumsq": float((flat * flat).sum()),
    }


def seedseq_cases():
    out = []
    for entropy, key, pool in [(0, (), 24), (42, (0, 0), 24), (2**64 - 1, (5, 3), 24),
                               (123, (2**40 + 3, 7), 24), (7, (), 4), (2**33, (1, 1), 4)]:
        st = np.random.SeedSequence(entropy=entropy, spawn_key=key, pool_size=pool).generate_state(4)
        out.append({"entropy": entropy, "spawn_key": list(key), "pool": pool, "state": [int(v) for v in st]})
    return out


def tree_case(seed, shape, sigmas, order=None):
    x = torch.zeros(shape)
    positive = sigmas[sigmas > 0]
    ns = K.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed)
    steps = [i for i in range(len(sigmas) - 1) if sigmas[i + 1] > 0]
    if order is not None:
        steps = [steps[j] for j in order]
    recs = []
    for i in steps:
        rec = pick(ns(sigmas[i], sigmas[i + 1]))
        rec["step"] = i
        recs.append(rec)
    return {"seed": seed, "shape": list(shape), "sigmas": [float(s) for s in sigmas], "queries": recs}


def stub_denoiser(x, sigma, **kwargs):
    s = sigma.double().view(-1, *([1] * (x.ndim - 1)))
    return (x.double() / (1 + s * s)).float()


def sampler_case(seed, shape, sigmas):
    torch.manual_seed(seed)
    x = torch.randn(shape) * sigmas[0]
    positive = sigmas[sigmas > 0]
    ns = K.BrownianTreeNoiseSampler(x, positive.min(), sigmas.max(), seed=seed)
    out = K.sample_dpmpp_2m_sde(stub_denoiser, x, sigmas, noise_sampler=ns)
    rec = pick(out)
    rec.update({"seed": seed, "shape": list(shape), "sigmas": [float(s) for s in sigmas]})
    return rec


def main():
    karras10 = K.get_sigmas_karras(10, SIGMA_MIN, SIGMA_MAX)
    expo6 = K.get_sigmas_exponential(6, SIGMA_MIN, SIGMA_MAX)
    big = 2**63 + 12345
    trees = [
        tree_case(0, (1, 4, 8, 8), karras10),
        tree_case(1234567, (1, 4, 8, 8), karras10),
        tree_case(big, (1, 4, 8, 8), karras10),
        tree_case(5, (2, 4, 8, 8), expo6),
        tree_case(1234567, (1, 4, 8, 8), karras10, order=[4, 0, 8, 2, 6, 1, 3, 7, 5]),
    ]
    samplers = [
        sampler_case(0, (1, 4, 8, 8), karras10),
        sampler_case(big, (1, 4, 8, 8), karras10),
        sampler_case(5, (2, 4, 8, 8), expo6),
    ]
    json.dump({"torch": torch.__version__, "numpy": np.__version__,
               "seedseq": seedseq_cases(), "trees": trees, "samplers": samplers}, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
