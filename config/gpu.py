# Overlay: nanoGPT's GPU recipe for character-level Shakespeare (train_shakespeare_char.py: 6 x 384, block 256, 5000 iterations; its baseline reaches about 1.47 validation loss). Changes the scale, not the ablation.
device = 'cuda'
compile = True
dtype = 'bfloat16'
eval_interval = 250
eval_iters = 200
log_interval = 10
block_size = 256
batch_size = 64
gradient_accumulation_steps = 1
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
max_iters = 5000  # lr_decay_iters and the annealing window scale with it (train.py)
lr_decay_iters = 5000
warmup_iters = 100
learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
mlp_ctx_rank = 128
if n_kv_head not in (None, 1):
    n_kv_head = 2  # the GQA peer: 2 K/V heads for 6 query heads (a third of the baseline's cache)
