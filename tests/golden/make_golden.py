"""Golden values from PyTorch for tests/golden.rs (DESIGN.md, oracle 2). CI never runs this; re-run it by hand:

    python3 -m pip install torch==2.11.0 safetensors numpy
    python3 tests/golden/make_golden.py        # writes tests/golden/*.safetensors

inception_mnist.py is a copy of the reference net (the crate's parameter names come from it).
Everything is float32 on the CPU with a fixed seed; inputs are made here and stored with the outputs.

module.safetensors   one Inception(cin=3, width=4, reduce=2) module on x [2, 3, 7, 7]:
                     its parameters, x, R, out = module(x), and the gradients of sum(out * R) w.r.t. x and
                     every parameter ("grad.<name>").
step.safetensors     one training step of InceptionMnist(map1=3, map2=2, reduce=2, hidden=8, dropout=0) on a
                     batch of 4 images with Adam(lr=1e-3): initial parameters ("init.<name>"), images, labels
                     (float32), the mean cross-entropy ("loss"), gradients ("grad.<name>") and the parameters
                     after the step ("after.<name>").
pytorch_model.safetensors   InceptionMnist(map1=3, map2=2, reduce=2, hidden=8) saved with plain save_file;
pytorch_logits.safetensors  its eval-mode logits on 3 images ("images", "logits").
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from inception_mnist import Inception, InceptionMnist

HERE = os.path.dirname(os.path.abspath(__file__))
torch.manual_seed(2016)
torch.set_num_threads(1)

# One module.
m = Inception(3, 4, 2)
x = torch.rand(2, 3, 7, 7, requires_grad=True)
r = torch.randn(2, 16, 7, 7)
out = m(x)
(out * r).sum().backward()
t = {name: p.detach().clone() for name, p in m.named_parameters()}
t.update({"grad." + name: p.grad.clone() for name, p in m.named_parameters()})
t.update({"x": x.detach(), "r": r, "out": out.detach(), "grad.x": x.grad.clone()})
save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(HERE, "module.safetensors"))

# One training step.
net = InceptionMnist(map1=3, map2=2, reduce=2, hidden=8, dropout=0.0)
net.train()
images = torch.rand(4, 1, 28, 28)
labels = torch.tensor([3, 1, 4, 1])
t = {"init." + name: p.detach().clone() for name, p in net.named_parameters()}
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
opt.zero_grad()
loss = F.cross_entropy(net(images), labels)
loss.backward()
t.update({"grad." + name: p.grad.clone() for name, p in net.named_parameters()})
opt.step()
t.update({"after." + name: p.detach().clone() for name, p in net.named_parameters()})
t.update({"images": images, "labels": labels.float(), "loss": loss.detach().reshape(1)})
save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(HERE, "step.safetensors"))
print("wrote module.safetensors and step.safetensors; loss", loss.item())

# A model file exactly as PyTorch users save one (plain save_file of the state dict: no metadata), and the
# logits it gives in eval mode on a fixed batch.
torch.manual_seed(7)
small = InceptionMnist(map1=3, map2=2, reduce=2, hidden=8, dropout=0.5).eval()
save_file({k: v.contiguous() for k, v in small.state_dict().items()}, os.path.join(HERE, "pytorch_model.safetensors"))
batch = torch.rand(3, 1, 28, 28)
with torch.no_grad():
    save_file({"images": batch, "logits": small(batch)}, os.path.join(HERE, "pytorch_logits.safetensors"))
print("wrote pytorch_model.safetensors and pytorch_logits.safetensors")
