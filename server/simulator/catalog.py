"""Simulated models: deterministic metadata derived from a name, and their layers and Modelfile."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from server.simulator.names import ModelName

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"

# Name fragments of embedding-only models (nomic-embed-text, mxbai-embed-large, all-minilm,
# bge-m3): they answer /api/embed but not chat or generate, as in Ollama.
_EMBED_HINTS = ("embed", "minilm", "bge")
# Every other model can chat, call tools, fill in the middle and think. Unlike Ollama, which
# turns thinking on when a thinking model's request leaves `think` out, the simulator thinks
# only when asked, so a plain request keeps its plain answer whatever the model.
_CHAT_CAPABILITIES = ("completion", "tools", "insert", "thinking")

# A Go template that mentions .Tools and .Suffix, which is how Ollama decides a model can call
# tools and fill in the middle (clients such as Continue look for ".Suffix" in it too).
_CHAT_TEMPLATE = (
    "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
    "{{- else }}{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n"
    "{{ .System }}<|eot_id|>{{ end }}"
    "{{- if .Tools }}<|start_header_id|>tools<|end_header_id|>\n\n"
    "{{ range .Tools }}{{ . }}\n{{ end }}<|eot_id|>{{ end }}"
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
    "{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|eot_id|>"
    "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}"
)
_EMBED_TEMPLATE = "{{ .Prompt }}"
_CHAT_PARAMETERS: dict[str, Any] = {
    "stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    media_type: str
    digest: str  # "sha256:<64 hex>"
    size: int

    @classmethod
    def of_text(cls, media_type: str, text: str) -> Layer:
        data = text.encode()
        return cls(media_type, sha256_digest(data), len(data))


@dataclass
class ModelEntry:
    """One model in the simulated local store, with everything /api/show reports."""

    name: ModelName
    modified_ns: int
    weights: Layer
    family: str
    parameter_count: int
    capabilities: tuple[str, ...]
    context_length: int
    embedding_length: int
    template: str
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    licenses: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    parent_model: str = ""
    quantization: str = "Q4_K_M"
    # Pulled and configured models keep the name-derived digest the simulator always reported;
    # created models get one from their layers.
    manifest_digest: str = ""

    @property
    def display(self) -> str:
        return self.name.display

    @property
    def layers(self) -> list[Layer]:
        layers = [self.weights, Layer.of_text(MEDIA_TEMPLATE, self.template)]
        if self.system:
            layers.append(Layer.of_text(MEDIA_SYSTEM, self.system))
        if self.parameters:
            layers.append(Layer.of_text(MEDIA_PARAMS, json.dumps(self.parameters)))
        layers.extend(Layer.of_text(MEDIA_LICENSE, text) for text in self.licenses)
        if self.messages:
            rendered = [{"role": role, "content": text} for role, text in self.messages]
            layers.append(Layer.of_text(MEDIA_MESSAGES, json.dumps(rendered)))
        return layers

    @property
    def config_layer(self) -> Layer:
        config = {
            "model_format": "gguf",
            "model_family": self.family,
            "model_families": [self.family],
            "model_type": self.parameter_size,
            "file_type": self.quantization,
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in self.layers]},
        }
        return Layer.of_text(MEDIA_CONFIG, json.dumps(config))

    @property
    def digest(self) -> str:
        if self.manifest_digest:
            return self.manifest_digest
        joined = ",".join(layer.digest for layer in self.layers)
        return hashlib.sha256(joined.encode()).hexdigest()

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers) + self.config_layer.size

    @property
    def parameter_size(self) -> str:
        return f"{self.parameter_count / 1e9:.1f}B"

    def details(self, *, parent: bool = True) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model if parent else "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def renamed(self, name: ModelName, modified_ns: int) -> ModelEntry:
        # A copy shares the manifest, so it keeps the digest (and the answers) of its source.
        return replace(self, name=name, modified_ns=modified_ns, manifest_digest=self.digest)

    def model_info(self, verbose: bool) -> dict[str, Any]:
        arch = self.family
        blocks = 16 + self.parameter_count // 500_000_000
        tokens = ["<|begin_of_text|>", "<|end_of_text|>", "!", '"', "#", "$", "%", "&"]
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.basename": self.name.model,
            "general.file_type": 15,
            "general.parameter_count": self.parameter_count,
            "general.quantization_version": 2,
            f"{arch}.attention.head_count": 32,
            f"{arch}.attention.head_count_kv": 8,
            f"{arch}.block_count": blocks,
            f"{arch}.context_length": self.context_length,
            f"{arch}.embedding_length": self.embedding_length,
            f"{arch}.feed_forward_length": self.embedding_length * 4,
            "tokenizer.ggml.bos_token_id": 128000,
            "tokenizer.ggml.eos_token_id": 128009,
            "tokenizer.ggml.model": "gpt2",
            # Without verbose Ollama blanks arrays longer than five items.
            "tokenizer.ggml.tokens": tokens if verbose else [],
            "tokenizer.ggml.token_type": [1] * len(tokens) if verbose else [],
        }
        return dict(sorted(info.items()))  # Go writes map keys sorted

    def tensors(self) -> list[dict[str, Any]]:
        width = self.embedding_length
        return [
            {"name": "token_embd.weight", "type": "Q6_K", "shape": [width, 128256]},
            {"name": "blk.0.attn_norm.weight", "type": "F32", "shape": [width]},
            {"name": "blk.0.attn_q.weight", "type": "Q4_K", "shape": [width, width]},
            {"name": "blk.0.attn_k.weight", "type": "Q4_K", "shape": [width, width // 4]},
            {"name": "blk.0.ffn_up.weight", "type": "Q4_K", "shape": [width, width * 4]},
            {"name": "output_norm.weight", "type": "F32", "shape": [width]},
        ]

    def parameters_text(self) -> str:
        # Ollama prints each value with Go's %#v, one line per list item, the key padded to 30.
        lines = []
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {_go_literal(item)}")
        return "\n".join(lines)

    def modelfile(self, models_dir: str, system: str, extra: dict[str, Any]) -> str:
        lines = [
            '# Modelfile generated by "ollama show"',
            "# To build a new Modelfile based on this, replace FROM with:",
            f"# FROM {self.display}",
            "",
            f"FROM {models_dir}/blobs/{self.weights.digest.replace(':', '-')}",
            f"TEMPLATE {_modelfile_quote(self.template)}",
        ]
        if system:
            lines.append(f"SYSTEM {_modelfile_quote(system)}")
        for key, value in {**self.parameters, **extra}.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {_modelfile_quote(_go_value(item))}")
        lines.extend(f"LICENSE {_modelfile_quote(text)}" for text in self.licenses)
        lines.extend(f"MESSAGE {role} {_modelfile_quote(text)}" for role, text in self.messages)
        return "\n".join(lines) + "\n"


def _go_value(value: Any) -> str:
    """Go's %v of a JSON-decoded value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _go_literal(value: Any) -> str:
    """Go's %#v of a JSON-decoded value: strings quoted, numbers and booleans bare."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return _go_value(value)


def _modelfile_quote(text: str) -> str:
    if "\n" in text or text.startswith(" ") or text.endswith(" "):
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def catalog_entry(name: ModelName, modified_ns: int) -> ModelEntry:
    """The model a configured or pulled name stands for, the same on every run."""
    display = name.display
    digest = hashlib.sha256(display.encode()).hexdigest()
    base = name.model.lower()
    family_match = re.match(r"[a-z]+[0-9]*", base)
    family = family_match.group(0) if family_match else "llama"
    size_match = re.search(r"(\d+(?:\.\d+)?)b", name.tag.lower())
    billions = float(size_match.group(1)) if size_match else 1 + int(digest[:2], 16) / 32
    weights_size = int(billions * 0.6e9) + int(digest[2:8], 16)
    weights = Layer(MEDIA_MODEL, sha256_digest(b"weights:" + display.encode()), weights_size)
    licence = f"Simulated {family} model: deterministic text, no weights, no rights reserved."
    if any(hint in base for hint in _EMBED_HINTS):
        return ModelEntry(
            name=name,
            modified_ns=modified_ns,
            weights=weights,
            family=family,
            parameter_count=int(billions * 1e9),
            capabilities=("embedding",),
            context_length=2048,
            embedding_length=768,
            template=_EMBED_TEMPLATE,
            licenses=(licence,),
            quantization="F16",
            manifest_digest=digest,
        )
    return ModelEntry(
        name=name,
        modified_ns=modified_ns,
        weights=weights,
        family=family,
        parameter_count=int(billions * 1e9),
        capabilities=_CHAT_CAPABILITIES,
        context_length=131072,
        embedding_length=2048 if billions < 2 else 3072 if billions < 5 else 4096,
        template=_CHAT_TEMPLATE,
        parameters=json.loads(json.dumps(_CHAT_PARAMETERS)),
        licenses=(licence,),
        manifest_digest=digest,
    )
