# Attention only: lens attention with the MLP (and ln_2) removed entirely. Can attention alone work?
out_dir = 'out-ablation_attn_only'
wandb_run_name = 'ablation_attn_only'
use_reciprocity = True
use_discoverability = True
mlp_disabled = True
