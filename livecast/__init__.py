"""livecast: a real-time generative media server (an LLM engine and a video diffusion pipeline on
one device). The only top-level import name this distribution installs."""
