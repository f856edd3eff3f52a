"""REST API for the customer register: input serializer -> service -> output serializer."""

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.response import Response

from core.models import TransformerArea
from core.permissions import Cap, require
from customers import selectors, services
from customers.models import (
    Account,
    Contact,
    Customer,
    CustomerCategory,
    CustomerStatus,
    IdType,
    ImportanceGrade,
    ServicePoint,
    SettlementMode,
    VoltageLevel,
)


class AccountOut(serializers.ModelSerializer):
    class Meta:
        model = Account
        fields = ["number", "settlement_mode", "status", "opened_on", "closed_on"]


class ServicePointOut(serializers.ModelSerializer):
    account = serializers.CharField(source="account.number")
    transformer_area = serializers.CharField(source="transformer_area.code")
    multiplier = serializers.IntegerField()

    class Meta:
        model = ServicePoint
        fields = [
            "number",
            "account",
            "address",
            "transformer_area",
            "ct_ratio",
            "pt_ratio",
            "multiplier",
            "status",
        ]


class ContactOut(serializers.ModelSerializer):
    class Meta:
        model = Contact
        fields = ["id", "name", "role", "phone", "email"]


class CustomerListOut(serializers.ModelSerializer):
    org_unit = serializers.CharField(source="org_unit.code")

    class Meta:
        model = Customer
        fields = [
            "number",
            "name",
            "category",
            "mobile_phone",
            "address",
            "status",
            "protected",
            "org_unit",
            "version",
        ]


class CustomerOut(CustomerListOut):
    accounts = AccountOut(many=True, read_only=True)
    service_points = ServicePointOut(many=True, read_only=True)
    contacts = ContactOut(many=True, read_only=True)

    class Meta(CustomerListOut.Meta):
        fields = [
            *CustomerListOut.Meta.fields,
            "id_type",
            "id_number_masked",
            "other_phone",
            "email",
            "voltage_level",
            "contracted_capacity_kva",
            "importance_grade",
            "protected_reason",
            "created_at",
            "updated_at",
            "accounts",
            "service_points",
            "contacts",
        ]


class CustomerCreateIn(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    id_type = serializers.ChoiceField(choices=IdType.choices)
    id_number = serializers.CharField(max_length=32, write_only=True)
    mobile_phone = serializers.CharField(max_length=20)
    other_phone = serializers.CharField(max_length=20, required=False, allow_blank=True, default="")
    email = serializers.EmailField(required=False, allow_blank=True, default="")
    address = serializers.CharField(max_length=200)
    category = serializers.ChoiceField(choices=CustomerCategory.choices)
    voltage_level = serializers.ChoiceField(choices=VoltageLevel.choices)
    contracted_capacity_kva = serializers.DecimalField(max_digits=10, decimal_places=2, min_value=0)
    importance_grade = serializers.ChoiceField(
        choices=ImportanceGrade.choices, default=ImportanceGrade.ORDINARY
    )
    protected = serializers.BooleanField(default=False)
    protected_reason = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    transformer_area = serializers.SlugRelatedField(slug_field="code", queryset=TransformerArea.objects.all())
    settlement_mode = serializers.ChoiceField(choices=SettlementMode.choices)
    service_address = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    ct_ratio = serializers.IntegerField(min_value=1, default=1)
    pt_ratio = serializers.IntegerField(min_value=1, default=1)


class CustomerUpdateIn(serializers.Serializer):
    version = serializers.IntegerField(
        help_text=_("The version you read; the update is refused with 409 if it has changed.")
    )
    name = serializers.CharField(max_length=100, required=False)
    mobile_phone = serializers.CharField(max_length=20, required=False)
    other_phone = serializers.CharField(max_length=20, required=False, allow_blank=True)
    email = serializers.EmailField(required=False, allow_blank=True)
    address = serializers.CharField(max_length=200, required=False)
    category = serializers.ChoiceField(choices=CustomerCategory.choices, required=False)
    voltage_level = serializers.ChoiceField(choices=VoltageLevel.choices, required=False)
    contracted_capacity_kva = serializers.DecimalField(
        max_digits=10, decimal_places=2, min_value=0, required=False
    )
    importance_grade = serializers.ChoiceField(choices=ImportanceGrade.choices, required=False)
    protected = serializers.BooleanField(required=False)
    protected_reason = serializers.CharField(max_length=200, required=False, allow_blank=True)
    status = serializers.ChoiceField(choices=CustomerStatus.choices, required=False)


class CustomerListCreateApi(GenericAPIView):
    serializer_class = CustomerListOut

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="Customer/account number, phone, name or address"),
            OpenApiParameter("category", str, enum=CustomerCategory.values),
        ],
        responses=CustomerListOut(many=True),
    )
    def get(self, request):
        actor = require(request.user, Cap.CUSTOMER_VIEW)
        qs = selectors.customer_search(
            actor=actor,
            query=request.query_params.get("q", ""),
            category=request.query_params.get("category", ""),
        )
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(CustomerListOut(page, many=True).data)

    @extend_schema(request=CustomerCreateIn, responses={201: CustomerOut})
    def post(self, request):
        actor = require(request.user, Cap.CUSTOMER_CREATE)
        data = CustomerCreateIn(data=request.data)
        data.is_valid(raise_exception=True)
        customer = services.customer_create(actor=actor, **data.validated_data)
        customer = selectors.customer_get(actor=actor, number=customer.number)
        return Response(CustomerOut(customer).data, status=status.HTTP_201_CREATED)


class CustomerDetailApi(GenericAPIView):
    serializer_class = CustomerOut

    @extend_schema(responses=CustomerOut)
    def get(self, request, number):
        actor = require(request.user, Cap.CUSTOMER_VIEW)
        return Response(CustomerOut(selectors.customer_get(actor=actor, number=number)).data)

    @extend_schema(request=CustomerUpdateIn, responses=CustomerOut)
    def patch(self, request, number):
        actor = require(request.user, Cap.CUSTOMER_CHANGE)
        customer = selectors.customer_get(actor=actor, number=number)
        data = CustomerUpdateIn(data=request.data)
        data.is_valid(raise_exception=True)
        changes = dict(data.validated_data)
        version = changes.pop("version")
        services.customer_update(actor=actor, customer=customer, expected_version=version, **changes)
        return Response(CustomerOut(selectors.customer_get(actor=actor, number=number)).data)
