# Overlay: the MQAR recall probe (python data/recall/prepare.py) with a window of 8 where a config has one: over its 32-token sequences 41% of the answers lie 8 or more tokens back from their key. Minutes on a CPU. Changes the task and scale, not the ablation.
dataset = 'recall'
device = 'cpu'
compile = False
eval_iters = 20
log_interval = 50
eval_interval = 100  # the iteration at which each run learns the lookup, to within 100
block_size = 32  # one sequence per window (the prepare script's --seq_len)
batch_size = 32
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
# GPT-2's tied 0.02-scale embeddings leave every model on the 'which values are present' plateau
# (0.25) for 10,000 steps; untied, unit-scale embeddings learn the lookup (~1.0) within 2000 (docs/results.md)
tie_embeddings = False
max_iters = 2000  # lr_decay_iters and the annealing window scale with it (train.py)
lr_decay_iters = 2000
warmup_iters = 100
learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
mlp_ctx_rank = 32  # as config/cpu.py
if n_kv_head not in (None, 1):
    n_kv_head = 2  # the GQA peer: half of the 4 heads (a quarter would be MQA)
if attn_window is not None:
    attn_window = 8  # a quarter of the sequence (a config's 32 would be all of it); ablate.py --kv_group=8 for its rings
