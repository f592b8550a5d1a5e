"""English formats, as Django's own (django/conf/locale/en/formats.py) but every time with seconds
and its zone: staff compare admin times with logs and traces, where a minute is far too coarse."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
