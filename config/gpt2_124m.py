# Overlay: GPT-2 124M on fineweb-edu (block 1024), the original recipe's 2000 -> 10000 annealing window of 15000 steps. Changes the scale, not the ablation.
dataset = 'fineweb_edu'
block_size = 1024
batch_size = 12
gradient_accumulation_steps = 5 * 8  # ~0.5M tokens per iteration, as nanoGPT's GPT-2 recipe
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
mlp_ctx_rank = 128
learning_rate = 6e-4
max_iters = 15000
lr_decay_iters = 15000
min_lr = 6e-5
warmup_iters = 700
beta2 = 0.95
eval_interval = 500
eval_iters = 100
log_interval = 10
if n_kv_head not in (None, 1):
    n_kv_head = n_head // 4  # the GQA peer: a quarter of the heads
