# Peer: cross-layer attention (CLA2, Brandon et al. 2024), plain GPT-2 otherwise. Every second layer uses the K and V of the layer below and keeps its own queries: half the baseline's cache, retrained.
out_dir = 'out-ablation_cla'
wandb_run_name = 'ablation_cla'
kv_share = 2
