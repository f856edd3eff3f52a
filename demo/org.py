"""The demo utility's organisation: one province, one city, two county companies."""

from dataclasses import dataclass

# (code, name, kind, children)
ORG_TREE = (
    "JN",
    "江南省电力有限公司",
    "province",
    [
        (
            "JN-LC",
            "临川市供电公司",
            "city",
            [
                (
                    "JN-LC-QX",
                    "青溪县供电公司",
                    "county",
                    [
                        ("QX-H01", "青溪城关营业厅", "hall", []),
                        ("QX-H02", "青溪东城营业厅", "hall", []),
                        ("QX-H03", "青溪新区营业厅", "hall", []),
                        ("QX-S01", "城关供电所", "station", []),
                        ("QX-S02", "东溪供电所", "station", []),
                        ("QX-S03", "石桥供电所", "station", []),
                        ("QX-S04", "柳河供电所", "station", []),
                        ("QX-S05", "开发区供电所", "station", []),
                    ],
                ),
                (
                    "JN-LC-BS",
                    "白石县供电公司",
                    "county",
                    [
                        ("BS-H01", "白石城关营业厅", "hall", []),
                        ("BS-H02", "白石南门营业厅", "hall", []),
                        ("BS-S01", "白石城区供电所", "station", []),
                        ("BS-S02", "白石乡供电所", "station", []),
                        ("BS-S03", "龙潭供电所", "station", []),
                    ],
                ),
            ],
        ),
    ],
)

# Towns and villages served by each supply station, for realistic addresses.
STATION_PLACES = {
    "QX-S01": ("青溪县城关镇", ["解放路", "人民路", "中山路", "文化路", "建设路", "滨江路"]),
    "QX-S02": ("青溪县东溪镇", ["东溪村", "上塘村", "下塘村", "枫林村", "新桥村"]),
    "QX-S03": ("青溪县石桥乡", ["石桥村", "杨家村", "李家坞", "后山村"]),
    "QX-S04": ("青溪县柳河镇", ["柳河村", "河口村", "长岭村", "茶园村", "竹林村"]),
    "QX-S05": ("青溪经济开发区", ["工业大道", "创业路", "科技路", "园区一路", "园区二路"]),
    "BS-S01": ("白石县城区", ["白石大道", "南门街", "北关路", "健康路", "学府路"]),
    "BS-S02": ("白石县白石乡", ["白石村", "塘坳村", "金竹村", "黄泥岗"]),
    "BS-S03": ("白石县龙潭镇", ["龙潭村", "水口村", "坪上村", "桃源村"]),
}

# Administrative division codes used for the demo ID numbers (fictional county codes).
COUNTY_DIVISION = {"JN-LC-QX": "361025", "JN-LC-BS": "361026"}


@dataclass(frozen=True)
class DemoUser:
    username: str
    role: str
    org_unit: str
    full_name: str


DEMO_PASSWORD = "kilowatt-demo"  # noqa: S105 - documented demo login, not a secret

DEMO_USERS = (
    DemoUser("admin", "admin", "JN", "系统管理员"),
    DemoUser("counter", "counter", "QX-H01", "王丽 (青溪城关营业厅)"),
    DemoUser("counter2", "counter", "BS-H01", "陈静 (白石城关营业厅)"),
    DemoUser("inspector", "inspector", "QX-S01", "赵刚 (城关供电所)"),
    DemoUser("inspector2", "inspector", "BS-S02", "孙强 (白石乡供电所)"),
    DemoUser("auditor", "auditor", "JN-LC", "周敏 (市公司稽查)"),
    DemoUser("manager", "manager", "JN-LC-QX", "吴军 (青溪县公司)"),
)
