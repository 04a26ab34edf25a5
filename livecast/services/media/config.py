"""What the diffusion side needs (composed into ServerSettings; the CLI flags come from here)."""
from __future__ import annotations

from dataclasses import dataclass, field

from livecast.streamdiff import StreamPipeline
from livecast.streamdiff.components import resolve_device, resolve_dtype


@dataclass(slots=True)
class MediaConfig:
    model: str = field(default="demo", metadata={
        "flag": "--diffusion-model",
        "help": "demo (trained by livecast on procedural scenes, CPU-live), demo-random (random weights, "
                "for timing), sd-turbo-shape, a diffusers folder or hub id"})
    device: str | None = field(default=None, metadata={
        "flag": "--diffusion-device", "help": "cuda or cpu (default: cuda if available)"})
    dtype: str = field(default="auto", metadata={
        "flag": "--diffusion-dtype", "help": "auto (fp16 on CUDA; bf16 on CPUs with bf16 arithmetic, else float32), float32, ..."})
    resolution: int | None = field(default=None, metadata={
        "flag": "--diffusion-resolution", "help": "working side in pixels, a multiple of 64 (default: the model's)"})
    loras: str = field(default="", metadata={
        "flag": "--diffusion-loras",
        "help": "style LoRAs streams may pick by name: name=PATH,... (a diffusers LoRA .safetensors "
                "or its folder); each is validated at startup"})
    controlnet: str | None = field(default=None, metadata={
        "flag": "--diffusion-controlnet",
        "help": "a diffusers ControlNet folder or hub id (canny: streams' controlnet_scale weighs it "
                "on their input's edges), or controlnet-shape (random weights, for timing)"})
    max_diffusion_loras: int = field(default=4, metadata={
        "help": "LoRA adapters kept resident (LRU); the others are re-read from their file on use"})
    max_batch_size: int = 8
    max_streams: int = 64
    max_video_sessions: int = field(default=4, metadata={"help": "WebRTC sessions beyond this get 503"})
    max_frame_clients: int = field(default=16, metadata={"help": "/v1/ws/frames sockets beyond this are refused"})
    max_whip_sources: int = field(default=4, metadata={"help": "WHIP publishers beyond this get 503"})
    max_whep_viewers: int = field(default=32, metadata={
        "help": "WHEP viewers (of all streams together) beyond this get 503"})
    latency_probe: bool = field(default=False, metadata={
        "help": "stamp each WebRTC input frame's pixel id on its output (livecast bench webrtc)"})
    ice_loopback: bool = field(default=False, metadata={
        "help": "offer only 127.0.0.1 to WebRTC peers (browser and server on one machine)"})

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_streams", "max_video_sessions", "max_frame_clients", "max_whip_sources",
                     "max_whep_viewers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.dtype != "auto":
            resolve_dtype(self.dtype, resolve_device("cpu"))  # ValueError on an unknown name
        if self.max_diffusion_loras < 1:
            raise ValueError(f"max_diffusion_loras must be >= 1, got {self.max_diffusion_loras}")
        self.lora_paths  # ValueError on a malformed list

    @property
    def lora_paths(self) -> dict[str, str]:
        """`loras` as {name: path}, in the order given."""
        paths: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in self.loras.split(","))):
            name, sep, path = (part.strip() for part in entry.partition("="))
            if not sep or not name or not path:
                raise ValueError(f"--diffusion-loras takes name=PATH entries, got {entry!r}")
            if name in paths:
                raise ValueError(f"--diffusion-loras names {name!r} twice")
            paths[name] = path
        return paths

    def load_pipeline(self) -> StreamPipeline:
        # on an idle 2-core CPU bf16 is as fast as fp32 at 128 px and 21% faster at 256 px
        dtype = None if self.dtype == "auto" else self.dtype
        options: dict = {"resolution": self.resolution} if self.resolution else {}
        if self.controlnet:
            options["controlnet"] = self.controlnet
        pipe = StreamPipeline.from_pretrained(self.model, device=self.device, dtype=dtype,
                                              max_loras=self.max_diffusion_loras, **options)
        for name, path in self.lora_paths.items():  # LoraError names a malformed adapter
            pipe.load_lora(name, path)
        return pipe
