"""Training: interactive fine-tuning and FastSAM3D's layer-wise then logit-level distillation.

``python -m fastsam3d.train --config C.toml [--resume last.pt]`` runs the config (``[model]``:
interactive training, ``[teacher]`` + ``[student]``: distillation); under
``torchrun --nproc_per_node N`` the work is split with DistributedDataParallel.
"""
