"""Everything after training, by role (as TF Serving's core / servables / model_servers):

- `format`: the exported model's layout (SavedModel versions, push); the only part stages use;
- `apis`: the wire protocol both ends speak (TensorProto, TF Serving's JSON) and the clients;
- `model_server`: `dae serve`, a drop-in for tensorflow_model_server;
- `batch`: `dae denoise`, image sources and destinations, in process, on Beam or via a server;
- `explorer`: `dae explore`, a web app that talks to a model server over HTTP only.

model_server, batch and explorer do not import each other (pyproject's contracts).
"""
