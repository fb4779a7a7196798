import sys

from jiomosa import logs
from jiomosa.core.settings import Settings
from jiomosa_operator.main import main

settings = Settings.from_env()
logs.setup(settings.log_format, settings.log_level)
sys.exit(main())
