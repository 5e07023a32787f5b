"""
lensgpt in Hugging Face transformers: the configuration and causal-LM classes that export_hf.py ships, with
the repo's own model.py beside them, in every export that GPT-2's classes cannot express (the lens logit
terms, route gates, MLP context, GQA/MQA, CLA, placement, attention gates, sliding windows). transformers
loads the two files as one package (trust_remote_code=True), so the model it runs is model.py's GPT itself,
not a second copy.

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

No KV cache on this route: every generation step runs the whole sequence again (exact, slower); lensgpt's own
engine.py has the caches (the input form, quantized K/V), which transformers' cache classes cannot hold.
"""
import torch
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # shipped: transformers imports this file and model.py as one package
    from .model import GPT, GPTConfig
except ImportError:
    if __package__:  # model.py itself failed (e.g. a torch too old): say so, don't hide it
        raise
    from model import GPT, GPTConfig  # in the repo, where export_hf.py imports this file as a top-level module


class LensGPTConfig(PretrainedConfig):
    """`lensgpt`: model.py's GPTConfig fields, the one description of the model; the standard names that
    transformers' tools read (vocab_size, hidden_size, max_position_embeddings, ...) are derived from it."""
    model_type = "lensgpt"

    def __init__(self, lensgpt=None, **kwargs):
        self.lensgpt = dict(lensgpt or {})
        cfg = GPTConfig(**self.lensgpt)  # a field this model.py does not know is an error here, not later
        for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "max_position_embeddings", "n_positions", "tie_word_embeddings", "use_cache"):
            kwargs.pop(k, None)  # saved for readers of config.json, always derived again from `lensgpt`
        super().__init__(tie_word_embeddings=cfg.tie_embeddings, **kwargs)
        self.vocab_size, self.hidden_size = cfg.vocab_size, cfg.n_embd
        self.num_hidden_layers, self.num_attention_heads = cfg.n_layer, cfg.n_head
        self.num_key_value_heads = cfg.n_kv_head
        self.max_position_embeddings = self.n_positions = cfg.block_size
        self.tie_word_embeddings = cfg.tie_embeddings
        self.use_cache = False  # no transformers cache on this route (the module docstring)


class LensGPTForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = LensGPTConfig
    base_model_prefix = "gpt"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    # transformers 5's form, {tied: source}; it ties only where config.tie_word_embeddings is True
    _tied_weights_keys = {"gpt.lm_head.weight": "gpt.transformer.wte.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.gpt = GPT(GPTConfig(**config.lensgpt))
        self.post_init()

    def _init_weights(self, module):
        pass  # GPT.__init__ has initialized every weight, with GPT-2's scaled residual projections

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # generate() builds no cache for this model (it would stay empty)

    def get_input_embeddings(self):
        return self.gpt.transformer.wte

    def set_input_embeddings(self, value):
        self.gpt.transformer.wte = value

    def get_output_embeddings(self):
        return self.gpt.lm_head

    def set_output_embeddings(self, value):
        self.gpt.lm_head = value

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        kwargs.pop("next_sequence_length", None)  # no cache: every step reads the whole sequence, even with use_cache
        return super().prepare_inputs_for_generation(input_ids, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, labels=None, logits_to_keep=0,
                return_dict=None, **kwargs):
        """Logits for every position (logits_to_keep=n: the last n, as transformers' models), and the next-token
        loss where `labels` are given (-100 ignored). GPT.forward gives every position's logits when it is given
        targets; the targets' own loss is dropped. GPT has no padding mask and no position ids of its own: a
        mask with zeros (padded batches) or shifted positions are errors, not silently wrong logits."""
        if input_ids is None:
            raise ValueError("LensGPTForCausalLM takes input_ids (token embeddings are model.py's, not an input)")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("lensgpt models take no padding mask: run sequences of one length per batch (or one "
                             "at a time)")
        if position_ids is not None and not torch.equal(
                position_ids, torch.arange(input_ids.size(1), device=position_ids.device).expand_as(position_ids)):
            raise ValueError("lensgpt models take positions 0.. only (no position_ids of their own)")
        if isinstance(logits_to_keep, int) and logits_to_keep == 1:
            logits, _ = self.gpt(input_ids)  # the last position only: GPT.forward without targets
        else:
            logits, _ = self.gpt(input_ids, targets=input_ids)
            if isinstance(logits_to_keep, int):
                logits = logits[:, -logits_to_keep:] if logits_to_keep else logits
            else:
                logits = logits[:, logits_to_keep]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device),
                                   ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits)
        return out if return_dict is not False else out.to_tuple()


LensGPTConfig.register_for_auto_class()
LensGPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
