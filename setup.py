"""What goes into the wheel besides service/ (everything else about the project is in pyproject.toml).

Two top-level folders ship as package data, built from their one source, never copied by hand:
templates/email/ (the email templates) as service/email_templates/ and contacts/ (the sample lists
for `communique serve --demo`) as service/demo/contacts/. pyproject.toml can map a folder to a
package (package-dir) but cannot add such a package to the discovered ones (packages.find), so
the package list is declared here. service/rendering/email_templates.py and service/cli/serve.py
look in the installed package first, then in the source tree (editable installs, checkouts).
"""

from setuptools import find_namespace_packages, setup

SHIPPED_FOLDERS = {"service.email_templates": "templates/email", "service.demo.contacts": "contacts"}

setup(
    packages=[*find_namespace_packages(include=["service", "service.*"],
                                       exclude=["*.__pycache__", "*.__pycache__.*"]),
              *SHIPPED_FOLDERS],
    package_dir=SHIPPED_FOLDERS,
    package_data={
        "service": ["templates/**/*", "static/**/*", "migrations/*", "migrations/**/*", "demo/**/*"],
        "service.email_templates": ["*.html", "*.txt"],
        "service.demo.contacts": ["*.csv"],
    },
)
