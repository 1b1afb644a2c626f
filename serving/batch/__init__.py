"""dae denoise: image sources and destinations, run in process, on Beam or through a server."""
