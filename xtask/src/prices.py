"""Writes core/data/model_prices.json from LiteLLM's published price map (the JSON its PyPI
package ships), keeping the providers and fields Sluice reads. Run by `cargo xtask prices`
(argv: litellm version, output path). Needs only pip and the standard library."""

import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

VERSION, OUT = sys.argv[1], pathlib.Path(sys.argv[2])
PROVIDERS = {
    "openai", "text-completion-openai", "anthropic", "azure", "azure_text", "bedrock", "bedrock_converse",
    "gemini", "vertex_ai-language-models", "vertex_ai-anthropic_models", "vertex_ai-embedding-models",
    "mistral", "groq", "deepseek", "together_ai", "fireworks_ai", "xai", "perplexity", "cohere", "cohere_chat",
}
MODES = {"chat", "completion", "embedding", "responses"}
FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write",
    "max_input_tokens": "max_input_tokens",
    "max_output_tokens": "max_output_tokens",
    # Long-context prices (Gemini, Claude): the whole request above the threshold.
    "input_cost_per_token_above_200k_tokens": "input_above_200k",
    "output_cost_per_token_above_200k_tokens": "output_above_200k",
    "cache_read_input_token_cost_above_200k_tokens": "cache_read_above_200k",
    "cache_creation_input_token_cost_above_200k_tokens": "cache_write_above_200k",
    "input_cost_per_token_above_128k_tokens": "input_above_128k",
    "output_cost_per_token_above_128k_tokens": "output_above_128k",
}

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                    "--dest", tmp, f"litellm=={VERSION}"], check=True)
    wheel = next(pathlib.Path(tmp).glob("litellm-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        source = json.loads(z.read("litellm/model_prices_and_context_window_backup.json"))

models = {}
for name, entry in source.items():
    if not isinstance(entry, dict) or entry.get("litellm_provider") not in PROVIDERS or entry.get("mode") not in MODES:
        continue
    if "input_cost_per_token" not in entry and "output_cost_per_token" not in entry:
        continue
    kept = {"provider": entry["litellm_provider"], "mode": entry["mode"]}
    kept.update({short: entry[long] for long, short in FIELDS.items() if isinstance(entry.get(long), (int, float))})
    models[name] = kept

# One model a line, sorted: a refresh reads as a diff of prices.
lines = [f"  {json.dumps(name)}: {json.dumps(models[name], sort_keys=True)}" for name in sorted(models)]
header = {"source": f"LiteLLM {VERSION}, litellm/model_prices_and_context_window_backup.json (PyPI wheel)",
          "refresh": "cargo xtask prices", "models": len(models)}
OUT.write_text("{\n" + f'  "_about": {json.dumps(header)},\n' + ",\n".join(lines) + "\n}\n")
print(f"{OUT}: {len(models)} models from LiteLLM {VERSION}")
