"""The sentences the model-server benchmarks send to `lstm`: short reviews, mixed in sentiment and length
(5-10 words once segmented)."""

CORPUS = [
    "这个产品很好用，推荐购买", "质量太差了，用了两天就坏了", "物流很快，包装也很好", "客服态度恶劣，再也不会来了",
    "房间干净整洁，早餐丰富", "性价比很高，下次还会买", "书的内容很空洞，不值这个价", "屏幕很清晰，运行流畅",
    "等了一个星期才到货，太慢了", "味道不错，分量也足", "酒店位置偏僻，周边什么都没有", "非常满意的一次购物",
]
