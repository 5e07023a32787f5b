# Overlay: laptop-CPU scale (nanoGPT's CPU recipe for shakespeare_char: a few minutes on 2 cores). Changes the scale, not the ablation.
device = 'cpu'
compile = False
eval_iters = 20
log_interval = 50
eval_interval = 250
block_size = 64
batch_size = 12
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
max_iters = 2000  # lr_decay_iters and the annealing window scale with it (train.py)
lr_decay_iters = 2000
warmup_iters = 100
learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
mlp_ctx_rank = 32  # rank scaled with the width (128 at 384 wide)
if n_kv_head not in (None, 1):
    n_kv_head = 2  # the GQA peer: half of the 4 heads (a quarter would be MQA)
