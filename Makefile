# Developer and packaging entry points; each is a thin wrapper over scripts/.
.PHONY: dev run test lint package install-desktop uninstall-desktop icons screenshots

dev:  ## editable install with everything for development (tests, GUI, packaging)
	bash scripts/bootstrap.sh test

run:  ## the tray app (or the headless server without a display), with the simulator
	bash scripts/run.sh --simulate

test:  ## ruff and both test suites, as CI runs them
	bash scripts/test.sh

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

package:  ## the one-folder bundle: dist/chatbot-companion/ and a .tar.gz
	bash scripts/package.sh

install-desktop: ## menu entry + icons for the bundle if built, else for .venv's chatbot-companion
	@if [ -x dist/chatbot-companion/chatbot-companion ]; then \
	  bash scripts/install_desktop.sh "$(CURDIR)/dist/chatbot-companion/chatbot-companion"; \
	else bash scripts/install_desktop.sh; fi

uninstall-desktop:
	bash scripts/install_desktop.sh --uninstall

icons:  ## regenerate resources/ from resources/icon.svg
	.venv/bin/python scripts/make_icons.py

screenshots:  ## docs/*.png (needs Xvfb, trayer, xdotool, imagemagick)
	bash scripts/screenshots.sh docs
	QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/settings_screenshots.py docs
