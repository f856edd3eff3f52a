"""REST API of metering: the batch ingest for external collection systems.

input serializer -> service -> output serializer. Each reading of a batch is validated by
the service, not here: one bad reading is rejected with its reason and the rest of the
batch is still stored, so the body is checked only for its shape.
"""

from decimal import Decimal

from django.conf import settings
from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.generics import GenericAPIView
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.utils import json

from core.permissions import Cap, require
from metering import selectors
from metering.models import ReadingBatch, ReadingQuality, ReadingSource, RejectionReason
from metering.services.readings import readings_ingest

MAX_READINGS_PER_REQUEST = 50_000
MAX_BODY_BYTES = 48 * 1024 * 1024  # ~1 KB per reading at the most, with room for notes


class BodyTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = _("The request body is too large; split the batch.")


class DecimalJSONParser(BaseParser):
    """JSON whose numbers with a fraction become Decimal, never float (DESIGN.md §5).

    Not a JSONParser subclass on purpose: DRF reads those through ``request.body``, which
    Django caps at DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), less than a full batch of 50,000
    readings. This parser reads the stream itself, up to ``MAX_BODY_BYTES``.
    """

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read(MAX_BODY_BYTES + 1) if stream is not None else b""
        if len(raw) > MAX_BODY_BYTES:
            raise BodyTooLarge()
        try:
            return json.loads(raw.decode(encoding), parse_float=Decimal, parse_constant=json.strict_constant)
        except ValueError as exc:
            raise ParseError(_("JSON parse error - %s") % exc) from exc


class ReadingIn(serializers.Serializer):
    """One daily freeze. Give numbers as JSON numbers or strings; they are read as decimals."""

    meter = serializers.CharField(
        required=False, help_text=_("The meter's 12-digit communication address (or give meter_id).")
    )
    meter_id = serializers.IntegerField(required=False)
    read_date = serializers.DateField(
        help_text=_("Freeze date: registers at 00:00 local time (Asia/Shanghai).")
    )
    read_at = serializers.DateTimeField(help_text=_("When the meter was read, ISO 8601 with offset."))
    forward_total = serializers.DecimalField(max_digits=12, decimal_places=2, help_text=_("kWh"))
    forward_sharp = serializers.DecimalField(max_digits=12, decimal_places=2, required=False)
    forward_peak = serializers.DecimalField(max_digits=12, decimal_places=2, required=False)
    forward_flat = serializers.DecimalField(max_digits=12, decimal_places=2, required=False)
    forward_valley = serializers.DecimalField(max_digits=12, decimal_places=2, required=False)
    reverse_total = serializers.DecimalField(max_digits=12, decimal_places=2, required=False)
    reactive_total = serializers.DecimalField(
        max_digits=12, decimal_places=2, required=False, help_text=_("kvarh")
    )
    max_demand_kw = serializers.DecimalField(max_digits=10, decimal_places=4, required=False)
    remaining_balance = serializers.DecimalField(
        max_digits=12, decimal_places=2, required=False, help_text=_("Local cost-control meters: yuan")
    )
    quality = serializers.ChoiceField(
        choices=[ReadingQuality.ESTIMATED, ReadingQuality.SUSPECT], required=False
    )
    quality_note = serializers.CharField(required=False, max_length=200)


@extend_schema_field(ReadingIn(many=True))
class ReadingListField(serializers.Field):
    """The readings as delivered: a list of objects, at most ``MAX_READINGS_PER_REQUEST``.
    Items are passed through untouched (the service validates and keeps rejects)."""

    default_error_messages = {
        "not_a_list": _("Give the readings as a list."),
        "empty": _("The batch has no readings."),
        "too_many": _("At most {limit} readings per request; split the batch."),
    }

    def to_internal_value(self, data):
        if not isinstance(data, list):
            self.fail("not_a_list")
        if not data:
            self.fail("empty")
        if len(data) > MAX_READINGS_PER_REQUEST:
            self.fail("too_many", limit=MAX_READINGS_PER_REQUEST)
        return data

    def to_representation(self, value):
        return value


class ReadingBatchIn(serializers.Serializer):
    source = serializers.ChoiceField(
        choices=[ReadingSource.EXTERNAL],
        default=ReadingSource.EXTERNAL,
        help_text=_("Always external for this API."),
    )
    batch_id = serializers.CharField(
        max_length=64, help_text=_("Your id for this delivery; sending it again returns the first result.")
    )
    readings = ReadingListField()


class RejectionOut(serializers.Serializer):
    index = serializers.IntegerField(source="position", help_text=_("Position in the readings list, from 0."))
    meter = serializers.CharField(source="meter_address")
    read_date = serializers.DateField(allow_null=True)
    reason = serializers.ChoiceField(choices=RejectionReason.choices)
    message = serializers.CharField()


class ReadingBatchOut(serializers.Serializer):
    source = serializers.CharField()
    batch_id = serializers.CharField(source="external_id")
    received_at = serializers.DateTimeField()
    completed = serializers.SerializerMethodField()
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    flagged = serializers.IntegerField(help_text=_("Accepted but suspect, for review."))
    rejections = serializers.SerializerMethodField()

    def get_completed(self, batch) -> bool:
        return batch.completed_at is not None

    @extend_schema_field(RejectionOut(many=True))
    def get_rejections(self, batch: ReadingBatch):
        return RejectionOut(selectors.reading_batch_rejections(batch=batch), many=True).data


class ReadingBatchCreateApi(GenericAPIView):
    parser_classes = [DecimalJSONParser]
    serializer_class = ReadingBatchIn

    @extend_schema(
        request=ReadingBatchIn,
        responses={201: ReadingBatchOut, 200: ReadingBatchOut},
        description=str(
            _(
                "Store a batch of daily readings. 201 when the batch is new, 200 with the first "
                "result when this batch_id was delivered before; 409 while the same batch is "
                "still being stored by an earlier request."
            )
        ),
    )
    def post(self, request):
        require(request.user, Cap.READINGS_INGEST)
        data = ReadingBatchIn(data=request.data)
        data.is_valid(raise_exception=True)
        batch = readings_ingest(
            source=data.validated_data["source"],
            external_id=data.validated_data["batch_id"],
            readings=data.validated_data["readings"],
            submitted_by=request.user.get_username(),
        )
        return Response(
            ReadingBatchOut(batch).data,
            status=status.HTTP_201_CREATED if batch.first_delivery else status.HTTP_200_OK,
        )


class ReadingBatchDetailApi(GenericAPIView):
    serializer_class = ReadingBatchOut

    @extend_schema(responses=ReadingBatchOut)
    def get(self, request, source, batch_id):
        require(request.user, Cap.READINGS_INGEST)
        batch = selectors.reading_batch_get(source=source, external_id=batch_id)
        return Response(ReadingBatchOut(batch).data)
