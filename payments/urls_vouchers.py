"""/payments/vouchers/: voucher batches, selling and redeeming at the counter, voiding;
payment reversals (request, approval queue); the refund of a closing account's balance."""

from django.urls import path

from payments import views_vouchers as views

urlpatterns = [
    path("", views.batch_list, name="voucher-batches"),
    path("batches/<str:code>/", views.batch_detail, name="voucher-batch"),
    path("sell/", views.voucher_sell_page, name="voucher-sell"),
    path("redeem/", views.voucher_redeem_page, name="voucher-redeem"),
    path("void/", views.voucher_void_page, name="voucher-void"),
    path("reversals/", views.reversal_queue, name="reversals"),
    path("reversals/request/<int:payment_id>/", views.reversal_request_page, name="reversal-request"),
    path("reversals/<int:reversal_id>/decision/", views.reversal_decision, name="reversal-decision"),
    path("refund/<str:account>/", views.refund_page, name="refund"),
]
