# Learned placement: a hard-concrete gate on every layer's attention, a quarter of them kept open by a learned Lagrange multiplier; closed layers are removed at the end.
out_dir = 'out-ablation_attn_budget_quarter'
wandb_run_name = 'ablation_attn_budget_quarter'
attn_budget = 0.25
