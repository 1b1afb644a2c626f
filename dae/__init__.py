"""dae: a TFX-style pipeline that trains, evaluates and serves denoising autoencoders.

The root package holds what every layer may read: the artifact formats stages hand each
other (`dae.artifacts`), Beam's setup (`dae.beam`) and the patches of libraries' internals
(`dae.compat`). The layers above it are installed from the repository's top-level folders:
`dae.pipeline` (orchestration), `dae.components` (the stages) and `dae.serving` (export
format, protocol and clients, model server, batch denoising, explorer). `dae.cli` is the app
shell over pipeline and serving; nothing imports it.
"""
