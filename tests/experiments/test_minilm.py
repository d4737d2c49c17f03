from transformers import AutoConfig, AutoTokenizer

from ina.embedded.minilm import model_path


def test_minilm_folder_is_a_loadable_bert():
    folder = model_path()
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert (
        tokenizer.decode(tokenizer("A gorgeous film.")["input_ids"], skip_special_tokens=True)
        == "a gorgeous film."
    )
