"""Model status and metadata as tensorflow-serving-api protos, for both front ends (REST
renders the same protos as JSON, as TF Serving does)."""

from __future__ import annotations

from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from dae.serving.servable import ServingError

State = get_model_status_pb2.ModelVersionStatus.State


def status_response(predictor, name: str, version: int | None):
    manager = predictor.manager
    if name != manager.name:
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
    states = dict(manager.states)
    if version is not None:
        if version not in states:
            raise ServingError("NOT_FOUND", f"Could not find version {version} of model {name}")
        states = {version: states[version]}
    if not states:
        raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for v in sorted(states, reverse=True):
        entry = response.model_version_status.add(version=v, state=State.Value(states[v].state))
        entry.status.SetInParent()  # TF Serving always shows it: {"error_code": "OK", ...}
        if states[v].error:
            entry.status.error_code = 2  # UNKNOWN
            entry.status.error_message = states[v].error
    return response


def metadata_response(servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        if not key.startswith("__"):  # __saved_model_init_op is plumbing, not a signature
            sigmap.signature_def[key].CopyFrom(sig)
    response.metadata["signature_def"].Pack(sigmap)
    return response


def rest_metadata(as_dict: dict) -> dict:
    """TF Serving's REST shape: the packed Any's '@type' is not shown."""
    for value in as_dict.get("metadata", {}).values():
        value.pop("@type", None)
    return as_dict
