# Overlay: the MQAR recall probe at a longer sequence (python data/recall_long/prepare.py): 4 pairs, then 8 queries over 64 tokens, with windows of 16 where a config has one, so that half of the answers lie 16 or more tokens back from their key. Changes the task and scale, not the ablation.
dataset = 'recall_long'
device = 'cpu'
compile = False
eval_iters = 20
log_interval = 50
eval_interval = 250  # the iteration at which each run learns the lookup, to within 250
block_size = 64  # one sequence per window (the prepare script's --seq_len)
batch_size = 16  # 1024 tokens an iteration, as config/recall.py's 32 x 32
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
# GPT-2's tied 0.02-scale embeddings leave every model on the 'which values are present' plateau
# (0.25) for 10,000 steps; untied, unit-scale embeddings learn the lookup (docs/results.md)
tie_embeddings = False
# the lookup over 64 tokens takes longer to learn than over config/recall.py's 32: 6000 iterations
max_iters = 6000  # lr_decay_iters and the annealing window scale with it (train.py)
lr_decay_iters = 6000
warmup_iters = 100
learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
mlp_ctx_rank = 32  # as config/cpu.py
if n_kv_head not in (None, 1):
    n_kv_head = 2  # the GQA peer: half of the 4 heads (a quarter would be MQA)
if attn_window is not None:
    attn_window = 16  # a quarter of the sequence (a config's 32 would be half of it)
