"""Model status and metadata as tensorflow-serving-api protos, for both front ends; REST
renders the same protos as JSON the way TF Serving does (model_servers/http_rest_api_util.cc,
ToJsonString): fields printed even when they hold their default value."""

from __future__ import annotations

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from dae.serving.model_server.servable import ServingError

State = get_model_status_pb2.ModelVersionStatus.State
SIGNATURE_DEF = "signature_def"  # GetModelMetadataImpl::kSignatureDef, the one field served


def status_response(predictor, name: str, version: int | None):
    """GetModelStatusImpl: every version the model's manager has seen, newest first, or
    only `version`; a version label is not looked at (TF Serving answers all versions)."""
    manager = predictor.core.known(name)
    states = dict(manager.states) if manager is not None else {}
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
    """SavedModelGetSignatureDef: the served version's name and number, and every
    SignatureDef of its MetaGraph as it is on disk (a TF2 SavedModel's
    __saved_model_init_op included, as TF Serving shows it)."""
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    for key, sig in servable.signature_defs.items():
        sigmap.signature_def[key].CopyFrom(sig)
    response.metadata[SIGNATURE_DEF].Pack(sigmap)
    return response


def _json(message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def rest_metadata(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    """The REST document TF Serving writes for a GetModelMetadataResponse: model_spec and the
    unpacked SignatureDefMap (no '@type'), each printed with its default-valued fields
    ("signature_name": "", every dim's "name": "", "unknown_rank": false, "defaults": {})."""
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF].Unpack(sigmap)
    return {"model_spec": _json(response.model_spec), "metadata": {SIGNATURE_DEF: _json(sigmap)}}
