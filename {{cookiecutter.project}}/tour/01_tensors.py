"""Chapter 1: tensors, the array type everything else in PyTorch is built on.

Creation, attributes, arithmetic, reshaping, indexing, in-place updates, the NumPy bridge
and broadcasting. Every cell prints what it shows and asserts what it claims.
"""

# %% [markdown]
# # PyTorch Tensors
#
# A `torch.Tensor` is an n-dimensional array of one element type. Compared with a NumPy
# array it adds two things: it can live on an accelerator, and it can record the
# operations applied to it so that gradients can be computed (chapter 2).

# %% Tensor Creation
import numpy as np
import torch

torch.manual_seed(0)

from_list = torch.tensor([[1, 2, 3], [4, 5, 6]])  # copies the data, infers int64
from_numpy = torch.tensor(np.linspace(0.0, 1.0, 5))  # float64: NumPy arrays default to it
zeros = torch.zeros(2, 3)
ones = torch.ones(2, 3, dtype=torch.int32)
noise = torch.randn(1000)  # samples from a standard normal distribution
steps = torch.arange(0, 10, 2)  # like range(): the end is excluded
like = torch.full_like(zeros, 7.0)  # the *_like factories copy shape, dtype and device

for name, t in [
    ("from_list", from_list),
    ("from_numpy", from_numpy),
    ("zeros", zeros),
    ("ones", ones),
    ("steps", steps),
    ("like", like),
]:
    print(f"{name:>10}: {t.tolist()}")
print(f"     noise: mean {noise.mean():.3f}, std {noise.std():.3f} over {noise.numel()} samples")

assert from_list.dtype == torch.int64 and from_numpy.dtype == torch.float64
assert zeros.sum() == 0 and ones.dtype == torch.int32
assert steps.tolist() == [0, 2, 4, 6, 8]
assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1
assert torch.tensor([1.0, 2.0]).dtype == torch.get_default_dtype() == torch.float32

# %% Tensor Attributes
image_batch = torch.zeros(8, 3, 32, 32)
print("shape:", image_batch.shape, "| dtype:", image_batch.dtype, "| device:", image_batch.device)
print(
    "ndim:",
    image_batch.ndim,
    "| numel:",
    image_batch.numel(),
    "| bytes per element:",
    image_batch.element_size(),
)
assert image_batch.shape == (8, 3, 32, 32) and image_batch.size(1) == 3
assert image_batch.dtype == torch.float32 and image_batch.device.type == "cpu"
assert image_batch.numel() == 8 * 3 * 32 * 32 and image_batch.element_size() == 4

half = image_batch.to(torch.float16)  # .to() changes dtype and/or device, returning a new tensor
assert half.dtype == torch.float16 and image_batch.dtype == torch.float32

# %% Tensor Operations
a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
b = torch.tensor([[10.0, 20.0], [30.0, 40.0]])

print("element-wise a * b:\n", a * b)
print("matrix product a @ b:\n", a @ b)
assert torch.equal(a * b, torch.mul(a, b))
assert torch.equal(a @ b, torch.matmul(a, b))
assert torch.equal(a @ b, torch.tensor([[70.0, 100.0], [150.0, 220.0]]))
assert torch.allclose(torch.exp(torch.log(b)), b)

# Reductions take a dim; keepdim=True keeps the reduced axis with size 1.
assert a.sum().item() == 10.0
assert a.sum(dim=0).tolist() == [4.0, 6.0] and a.sum(dim=1, keepdim=True).shape == (2, 1)

# %% [markdown]
# ### view vs reshape
#
# `view` reinterprets the same memory with a new shape and never copies, so it only
# works when the memory layout allows it. `reshape` returns a view when it can and a
# copy when it must. A transposed tensor is the classic case where `view` fails.

# %% view vs reshape
flat = torch.arange(6)
grid = flat.view(2, 3)
assert grid.data_ptr() == flat.data_ptr()  # same storage
grid[0, 0] = 100
assert flat[0] == 100  # writing through the view changed the original

transposed = grid.t()
print("transposed is contiguous:", transposed.is_contiguous())
try:
    transposed.view(6)
    raise AssertionError("view on a non-contiguous tensor should fail")
except RuntimeError as err:
    print("view failed:", str(err).split(".")[0])
reshaped = transposed.reshape(6)  # silently copies
assert reshaped.data_ptr() != flat.data_ptr()
assert reshaped.tolist() == [100, 3, 1, 4, 2, 5]
assert grid.view(-1, 2).shape == (3, 2)  # -1 means "infer this dimension"

# %% Stacking and concatenating
r, g = torch.zeros(4, 4), torch.ones(4, 4)
stacked = torch.stack([r, g, g])  # adds a NEW dimension
joined = torch.cat([r, g, g])  # grows an EXISTING dimension
side_by_side = torch.cat([r, g], dim=1)
print(
    "stack:",
    tuple(stacked.shape),
    "| cat dim 0:",
    tuple(joined.shape),
    "| cat dim 1:",
    tuple(side_by_side.shape),
)
assert stacked.shape == (3, 4, 4) and joined.shape == (12, 4) and side_by_side.shape == (4, 8)

# %% Indexing, Slicing, Joining, Mutating
m = torch.arange(12).reshape(3, 4)
print(m)
assert m[1, 2] == 6  # one element (still a 0-d tensor; .item() gives the Python number)
assert m[1].tolist() == [4, 5, 6, 7]  # a row
assert m[:, 1].tolist() == [1, 5, 9]  # a column
assert m[::2, -1].tolist() == [3, 11]  # every other row, last column
assert m[m > 8].tolist() == [9, 10, 11]  # a boolean mask selects (and copies)
assert m[[0, 2], [0, 3]].tolist() == [0, 11]  # integer-array ("fancy") indexing
assert m[..., None].shape == (3, 4, 1)  # None inserts an axis, like unsqueeze(-1)

column = m[:, 0]  # basic slices are views into m
column[:] = -1
assert m[:, 0].tolist() == [-1, -1, -1]

# Splitting is the inverse of joining.
top, bottom = torch.split(m, [1, 2], dim=0)
assert top.shape == (1, 4) and bottom.shape == (2, 4)
assert torch.equal(torch.cat([top, bottom]), m)

# %% In-place operations
v = torch.ones(3)
pointer = v.data_ptr()
v.add_(5)  # the trailing underscore marks an in-place method
v.mul_(2)
print("after add_(5).mul_(2):", v.tolist())
assert v.tolist() == [12.0, 12.0, 12.0] and v.data_ptr() == pointer
w = v.add(1)  # without the underscore: a new tensor, v is unchanged
assert v[0] == 12 and w[0] == 13
m.masked_fill_(m < 0, 0)  # mutate selected elements in place
assert m[:, 0].tolist() == [0, 0, 0]

# %% NumPy Bridge
array = np.arange(4, dtype=np.float32)
shared = torch.from_numpy(array)  # no copy: both objects use the same buffer
array[0] = 42.0
print("tensor after editing the NumPy array:", shared.tolist())
assert shared[0] == 42.0

back = shared.numpy()  # no copy in this direction either (CPU tensors only)
shared.mul_(2)
assert back[0] == 84.0 and np.shares_memory(back, array)

copied = torch.tensor(array)  # torch.tensor always copies
array[1] = -1.0
assert copied[1] == 2.0 and shared[1] == -1.0

needs_grad = torch.ones(2, requires_grad=True)
try:
    needs_grad.numpy()
    raise AssertionError(".numpy() should refuse a tensor that tracks gradients")
except RuntimeError as err:
    print("numpy() on a tensor that requires grad:", err)
assert needs_grad.detach().numpy().tolist() == [1.0, 1.0]  # detach first (chapter 2)

# %% Broadcasting
# Align shapes from the right; each pair of sizes must be equal or one of them must be 1,
# and missing leading dimensions count as 1. Size-1 axes are stretched without copying.
col = torch.arange(3).reshape(3, 1)  # (3, 1)
row = torch.arange(4).reshape(1, 4)  # (1, 4)
table = col * 10 + row  # (3, 4)
print(table)
assert table.shape == (3, 4) and table[2, 3] == 23

batch = torch.ones(5, 3)
bias = torch.tensor([1.0, 2.0, 3.0])  # (3,) is treated as (1, 3)
assert (batch + bias).shape == (5, 3) and (batch + bias)[4].tolist() == [2.0, 3.0, 4.0]
assert torch.broadcast_shapes((8, 1, 6), (7, 1)) == (8, 7, 6)

try:
    batch + torch.ones(5)  # (5, 3) and (5,): the trailing sizes 3 and 5 clash
    raise AssertionError("shapes (5, 3) and (5,) must not broadcast")
except RuntimeError as err:
    print("broadcast error:", err)
# The fix is to say which axis the 5 belongs to.
assert (batch + torch.ones(5)[:, None]).shape == (5, 3)

# Broadcasting also applies dtype promotion: int64 + float32 -> float32.
assert (torch.arange(3) + torch.ones(3)).dtype == torch.float32
